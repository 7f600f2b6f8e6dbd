"""The two generators see the same tokens and sample per record: per-row seeded sampling in HFEngine (a row's text
does not depend on its batch), and VLLMEngine's requests (token ids, one SamplingParams per record, the same stop
ids) checked against a stand-in LLM that records what it was given, on a Llama-3-style tokenizer whose chat
template writes the BOS token itself (re-tokenising the rendered text would add a second one)."""

import importlib.util
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from desta.selfgen.engine import Decoding, HFEngine, RowSampler, VLLMEngine, chat_token_ids, record_seed

_spec = importlib.util.spec_from_file_location("selfgen_tiny", Path(__file__).parent / "test_selfgen_generate.py")
tiny_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_mod)

# Meta-Llama-3-8B-Instruct's chat template (tokenizer_config.json): the template itself writes bos_token
LLAMA3_TEMPLATE = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
                   "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
                   "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
                   "{{ content }}{% endfor %}{% if add_generation_prompt %}"
                   "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
CHATS = [[{"role": "system", "content": "You are a helpful assistant."},
          {"role": "user", "content": "Describe the audio. " * (1 + i % 3) + f"Clip {i}."}] for i in range(5)]


def llama3_style(path: Path) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A byte-level BPE whose post-processor prepends <|begin_of_text|> (as Llama 3's tokenizer.json does), Llama 3's
    chat template, eos <|end_of_text|> with generation eos [<|end_of_text|>, <|eot_id|>], and a tiny random Llama."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=LLAMA3_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["Describe the audio. You are a helpful assistant. system user assistant"] * 4, trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[
        ("<|begin_of_text|>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
    fast.chat_template = LLAMA3_TEMPLATE
    torch.manual_seed(0)
    eos = [fast.convert_tokens_to_ids(t) for t in ("<|end_of_text|>", "<|eot_id|>")]
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, bos_token_id=bos, eos_token_id=eos)
    model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=eos)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return model, fast


@pytest.fixture(scope="module")
def llama3(tmp_path_factory):
    return llama3_style(tmp_path_factory.mktemp("llama3"))


def test_chat_ids_keep_one_bos_where_retokenising_the_text_gives_two(llama3):
    _, tok = llama3
    bos = tok.bos_token_id
    ids = chat_token_ids(tok, CHATS[0])
    assert ids[0] == bos and ids.count(bos) == 1
    # what the old vLLM path did: render the template to text, then let vLLM tokenise it with special tokens added
    text = tok.apply_chat_template(CHATS[0], add_generation_prompt=True, tokenize=False)
    assert tok(text)["input_ids"][:2] == [bos, bos]


class RecordingLLM:
    """Stands in for vllm.LLM: records each generate() call and answers greedily with the HF model itself on the
    token ids it was given (what vLLM would compute on the same tokens)."""

    def __init__(self, model, max_new_tokens: int):
        self.model, self.max_new_tokens, self.calls = model, max_new_tokens, []

    def generate(self, prompts, sampling_params, use_tqdm=True):
        self.calls.append((prompts, sampling_params, use_tqdm))
        outs = []
        for p in prompts:
            ids = torch.tensor([p["prompt_token_ids"]])
            new = self.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=self.max_new_tokens, pad_token_id=0)[0, ids.shape[1]:]
            outs.append(SimpleNamespace(outputs=[SimpleNamespace(token_ids=new.tolist())]))
        return outs


def test_vllm_requests_carry_token_ids_record_seeds_and_stop_ids(llama3):
    model, tok = llama3
    hf = HFEngine(model, tok, Decoding(max_new_tokens=6), batch_size=1)
    llm = RecordingLLM(model, 6)
    vllm = VLLMEngine(llm, tok, Decoding(max_new_tokens=6), chunk=2, eos=hf.eos_ids, make_params=dict)
    prompts = [vllm.encode(c) for c in CHATS]
    seeds = [record_seed(0, f"demo/c{i}#0") for i in range(len(CHATS))]
    assert prompts == [hf.encode(c) for c in CHATS]
    outs = sorted((o for b in vllm.generate(prompts, seeds, skip=frozenset({0, 1, 3})) for o in b),
                  key=lambda o: o.index)
    # chunks [0, 1] (done), [2, 3] (sent whole: the same chunk as an uninterrupted run), [4]
    assert [[p["prompt_token_ids"] for p in call[0]] for call in llm.calls] == [prompts[2:4], prompts[4:]]
    sent = [kw for call in llm.calls for kw in call[1]]
    assert [kw["seed"] for kw in sent] == seeds[2:]
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert all(kw["temperature"] == 0.0 and kw["max_tokens"] == 6 and eot in kw["stop_token_ids"]
               and kw["detokenize"] is False for kw in sent)
    assert all(call[2] is False for call in llm.calls) and [o.index for o in outs] == [2, 4]
    # same tokens in, same text out: the HF engine on the same prompts writes the same responses
    hf_outs = {o.index: o for b in hf.generate(prompts, seeds) for o in b}
    assert [(o.text, o.new_tokens) for o in outs] == [(hf_outs[i].text, hf_outs[i].new_tokens) for i in (2, 4)]


def test_vllm_sampling_params_per_record():
    d = Decoding(max_new_tokens=9, do_sample=True, temperature=0.7, top_p=0.8)
    engine = VLLMEngine(llm=None, tokenizer=None, decoding=d, chunk=4, eos=[7], make_params=dict)
    kw = engine.sampling_kwargs(123)
    assert kw == {"max_tokens": 9, "stop_token_ids": [7], "detokenize": False, "seed": 123, "temperature": 0.7,
                  "top_p": 0.8}
    vllm = pytest.importorskip("vllm")  # on GPU machines: the real SamplingParams accepts exactly these fields
    assert vllm.SamplingParams(**kw).seed == 123


def test_record_seed_is_a_stable_function_of_run_seed_and_id():
    a = record_seed(0, "demo/c000#0")
    assert a == record_seed(0, "demo/c000#0") and 0 <= a < 2**63
    assert len({a, record_seed(1, "demo/c000#0"), record_seed(0, "demo/c000#1")}) == 3


def test_row_sampler_draws_from_the_nucleus_with_one_stream_per_row():
    scores = torch.log(torch.tensor([[0.25, 0.75, 1e-9]])).repeat(4000, 1)
    picked = RowSampler(range(4000), 1.0, 1.0, torch.device("cpu"))(None, scores.clone()).argmax(-1)
    assert abs((picked == 1).float().mean().item() - 0.75) < 0.03 and (picked != 2).all()
    out = RowSampler([5], 1.0, 0.5, torch.device("cpu"))(None, torch.log(torch.tensor([[0.1, 0.3, 0.6]])))
    assert out[0].tolist() == [-math.inf, -math.inf, 0.0]  # top_p 0.5 keeps only the 0.6 token
    again = [RowSampler([s], 1.0, 1.0, torch.device("cpu"))(None, scores[:1].clone()).argmax(-1).item()
             for s in (11, 11)]
    assert again[0] == again[1]


def test_sampled_row_depends_on_its_seed_not_on_its_batch(tmp_path):
    from desta.models.store import load_llm

    model, tok = load_llm(str(tiny_mod.make_tiny_llm(tmp_path / "llm")))
    engine = HFEngine(model, tok, Decoding(max_new_tokens=12, do_sample=True, temperature=1.0, top_p=1.0), 4)
    short, long = engine.encode(CHATS[0]), engine.encode(CHATS[2])
    alone = engine.generate_ids([short], [101])[0]
    assert engine.generate_ids([short, short], [101, 202])[0] == alone  # same prompt, other seed beside it
    assert engine.generate_ids([long, short, long], [7, 101, 8])[1] == alone  # left-padded among longer prompts
    others = {engine.generate_ids([short], [s])[0][0] for s in (202, 303, 404)}
    assert len(others | {alone[0]}) > 1, "different record seeds must give different samples"


def test_runtime_bf16_on_gpu_fp32_on_cpu_and_vllm_needs_a_gpu():
    from params_util import default_params

    from desta.selfgen.ray_run import actor_resources
    from desta.selfgen.shards import Runtime, resolve_runtime

    g = default_params().generate
    assert g.dtype == "auto" and resolve_runtime(g, n_gpus=2) == Runtime("cuda", "bfloat16")
    assert resolve_runtime(g, n_gpus=0) == Runtime("cpu", "float32")
    assert resolve_runtime(g.model_copy(update={"dtype": "float16"}), 1).dtype == "float16"
    with pytest.raises(RuntimeError, match="generate.device is 'cuda'"):
        resolve_runtime(g.model_copy(update={"device": "cuda"}), 0)
    vllm = g.model_copy(update={"backend": "vllm", "vllm": g.vllm.model_copy(update={"tensor_parallel_size": 4})})
    with pytest.raises(RuntimeError, match="backend: hf"):
        resolve_runtime(vllm, 0)
    assert actor_resources(vllm, resolve_runtime(vllm, 8)) == {"num_gpus": 4.0, "num_cpus": 1.0}
    assert actor_resources(g, resolve_runtime(g, 0)) == {"num_cpus": float(g.ray_cpus_per_worker)}


def test_vllm_backend_without_vllm_names_the_extra(monkeypatch):
    import sys

    from params_util import default_params

    from desta.selfgen.shards import load_vllm

    monkeypatch.setitem(sys.modules, "vllm", None)  # as on a machine without the extra
    with pytest.raises(RuntimeError, match=r"pip install -e \.\[vllm\]"):
        load_vllm(default_params({"generate": {"backend": "vllm"}}).generate, "/nowhere", "bfloat16")


def test_unreachable_ray_cluster_fails_fast_naming_the_setting():
    import socket
    import time

    from desta.ray_cluster import RayClusterError, ray_cluster

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    t0 = time.perf_counter()
    with pytest.raises(RayClusterError, match=r"generate.ray_address='127.0.0.1:\d+': no Ray cluster answers"), \
            ray_cluster(f"127.0.0.1:{port}", "generate.ray_address"):
        pass
    assert time.perf_counter() - t0 < 10
