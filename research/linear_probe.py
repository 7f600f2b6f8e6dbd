"""What the audio path carries, apart from what the LLM makes of it: a linear probe for one speaker attribute.

    .venv/bin/python research/linear_probe.py [--params params.yaml] [--model data/model | untrained]
                                                [--attribute gender]

Run in a workspace where `desta prepare` has written paths.manifests (and, for a trained model, `desta train` has
written it). For every train- and test-split clip labelled with the attribute it takes the frozen Whisper states
of each tapped layer (mean over the clip's frames) and the connector's output (mean over its queries), fits an
L2-regularised logistic regression (binary attributes) on the train clips and prints its accuracy on the test
clips (unseen voices in the demo corpus). High probe accuracy with chance-level held-out answers means the
connector carries the attribute and the frozen LLM does not yet say it. Figures: research/README.md, finding 3.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from desta.config import load_params
from desta.data.manifest import Clip, iter_clips
from desta.models.audio_llm import DeSTA25AudioModel


def features(model: DeSTA25AudioModel, clips: list[Clip], batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """[n, L, d] tapped encoder states and [n, D] connector outputs, each averaged over its time/query axis."""
    enc, con = [], []
    for i in range(0, len(clips), batch):
        chunk = clips[i:i + batch]
        convs = [[{"role": "user", "content": "<|AUDIO|>", "audios": [{"audio": c.audio, "text": ""}]}] for c in chunk]
        inp = model.build_inputs(convs, [""] * len(chunk))
        with torch.no_grad():
            hidden = model.encode_audio(inp["input_features"], inp["audio_frames"])  # [n, L, T, d]
            queries = model.connector(hidden, inp["audio_frames"])  # [n, P, D]
        for j in range(len(chunk)):
            enc.append(hidden[j, :, :int(inp["audio_frames"][j])].mean(1).float().numpy())
            con.append(queries[j].mean(0).float().numpy())
    return np.stack(enc), np.stack(con)


def probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> float:
    """Test accuracy of a logistic regression (standardised inputs, L2 1e-2, L-BFGS) fitted on the train rows."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    a = torch.tensor((x_train - mu) / sd, dtype=torch.float32)
    b = torch.tensor((x_test - mu) / sd, dtype=torch.float32)
    y = torch.tensor(y_train, dtype=torch.float32)
    w, bias = torch.zeros(a.shape[1], requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(a @ w + bias, y) + 1e-2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((((b @ w + bias) > 0).numpy() == y_test).mean())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", default=None, help="trained model dir (default paths.model) or 'untrained'")
    ap.add_argument("--attribute", default="gender", help="a binary Clip field (default gender)")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    which = args.model or params.paths.model
    model = (DeSTA25AudioModel.from_params(params.model, params.model_cache_dir()) if which == "untrained"
             else DeSTA25AudioModel.from_pretrained(which, params.model_cache_dir())).eval()
    split = {s: [c for c in iter_clips(params.paths.manifests, splits=[s]) if getattr(c, args.attribute)]
             for s in ("train", "test")}
    values = sorted({getattr(c, args.attribute) for c in split["train"] + split["test"]})
    if len(values) != 2 or not split["test"]:
        raise SystemExit(f"{params.paths.manifests}: --attribute {args.attribute} needs exactly two values and "
                         f"labelled test clips; found values {values} and {len(split['test'])} test clips")
    y = {s: np.array([getattr(c, args.attribute) == values[1] for c in clips]) for s, clips in split.items()}
    (enc_tr, con_tr), (enc_te, con_te) = features(model, split["train"]), features(model, split["test"])
    print(f"{which}: {args.attribute} ({values[0]} / {values[1]}), {len(split['train'])} train clips, "
          f"{len(split['test'])} test clips (majority {max(y['test'].mean(), 1 - y['test'].mean()):.2f})")
    for layer in range(enc_tr.shape[1]):
        acc = probe(enc_tr[:, layer], y["train"], enc_te[:, layer], y["test"])
        print(f"  whisper tapped layer {layer}: test accuracy {acc:.2f}")
    print(f"  connector output: test accuracy {probe(con_tr, y['train'], con_te, y['test']):.2f}")


if __name__ == "__main__":
    main()
