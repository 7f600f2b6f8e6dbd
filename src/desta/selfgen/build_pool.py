"""Build the instruction pool (src/desta/prompt_pool.jsonl) from hand-written templates x slot values.

Run once when the templates change, then commit the jsonl (the pool is versioned data, not rebuilt at run time):
    python -m desta.selfgen.build_pool            # rewrites the shipped file
    python -m desta.selfgen.build_pool --check    # exit 1 if the shipped file differs from what the templates give
Each line: {"id": "p0001", "category": ..., "domains": [...], "text": ...}, plus "requires": [Clip fields] for prompts
that ask about labelled attributes (sampled only for clips that have every one of them, so the generator answers
from the seed description instead of guessing). Ids are assigned in template order.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

POOL_PATH = Path(__file__).parents[1] / "prompt_pool.jsonl"  # read by desta.prompt_pool
ALL = ["speech", "sound", "music"]

# category -> (domains it applies to, [(template, {slot: values}[, (required Clip fields)])]); slots expand as a
# Cartesian product.
Template = tuple[str, dict[str, list[str]]] | tuple[str, dict[str, list[str]], tuple[str, ...]]
TEMPLATES: dict[str, tuple[list[str], list[Template]]] = {
    "description": (ALL, [
        ("{verb} the audio{detail}.", {
            "verb": ["Describe", "Summarize", "Characterize", "Explain", "Give an overview of"],
            "detail": ["", " in one sentence", " in detail", " in two or three sentences", " briefly",
                       " for someone who cannot hear it"]}),
        ("What can you hear in {this}?", {"this": ["this audio", "this clip", "the recording", "this sound file"]}),
        ("Tell me about {this}{tail}.", {"this": ["this audio", "this recording", "the clip"],
                                         "tail": ["", " in a few words", " as if to a friend"]}),
        ("What is happening in {this}? {ask}", {
            "this": ["this audio", "this recording", "this clip"],
            "ask": ["", "Be specific.", "Mention everything you notice.", "Keep it short."]}),
        ("Describe the {aspect} of this recording.", {"aspect": [
            "overall character", "audio quality", "main content", "atmosphere", "background", "structure"]}),
        ("Write a {kind} for this audio clip.", {
            "kind": ["caption", "short caption", "detailed caption", "one-line summary", "title", "short description",
                     "alt text", "catalogue entry"]}),
    ]),
    "transcription": (["speech"], [
        ("{verb} {what}{how}.", {
            "verb": ["Transcribe", "Write down", "Repeat"],
            "what": ["what is said", "the speech", "the spoken words", "what the speaker says"],
            "how": ["", " exactly", " word for word", " verbatim", " without any extra comment"]}),
        ("What {does} the speaker say{tail}?", {
            "does": ["does", "exactly does"], "tail": ["", " in this clip", " in the recording"]}),
        ("Give me the transcript of this recording{tail}.", {
            "tail": ["", " with correct punctuation", " in lowercase", " and nothing else"]}),
    ]),
    "paralinguistic": (["speech"], [
        ("What is the speaker's {attr}?", {"attr": [
            "emotion", "gender", "approximate age", "accent", "speaking speed", "pitch", "tone of voice", "mood",
            "speaking style", "volume", "attitude", "emotional state"]}),
        ("How would you describe the {attr} of the voice{tail}?", {
            "attr": ["pitch", "speed", "energy", "loudness", "emotion", "quality"],
            "tail": ["", " in this clip", ", and why"]}),
        ("Is the speaker {pair}?", {"pair": ["male or female", "happy or sad", "calm or agitated",
                                            "speaking fast or slowly", "young or old", "loud or quiet",
                                            "sincere or sarcastic", "reading or speaking spontaneously"]}),
        ("{ask} the speaker's {attr} from their voice.", {
            "ask": ["Identify", "Guess", "Infer", "Estimate"],
            "attr": ["emotion", "gender", "age", "accent", "mood", "intent"]}),
        ("What does the voice tell you about the speaker's {what}?", {"what": [
            "feelings", "age", "origin", "personality", "health", "confidence", "relationship to the listener"]}),
        ("Does the speaker sound {state}? Explain.", {"state": [
            "happy", "angry", "nervous", "confident", "tired", "surprised", "bored", "sad", "excited", "neutral"]}),
    ]),
    "sound": (["sound"], [
        ("What {noun} {can} you hear in this clip?", {
            "noun": ["sounds", "sound events", "noises", "sources of sound"], "can": ["can", "do"]}),
        ("{ask} the main sound source in the audio.", {"ask": ["Identify", "Name", "Describe", "Classify"]}),
        ("Where could this sound have been recorded{tail}?", {"tail": ["", "? Explain your guess", " and when"]}),
        ("Is {pair}?", {"pair": [
            "the sound source natural or man-made", "the environment indoor or outdoor",
            "the sound source close or far away", "the sound continuous or intermittent",
            "the sound loud or soft", "the scene busy or quiet"]}),
        ("{ask} the acoustic environment of this recording{tail}.", {
            "ask": ["Describe", "Characterize"], "tail": ["", " and the sounds in it", " in one sentence"]}),
        ("Which {thing} produces the sound in this clip?", {"thing": ["object", "animal", "machine", "event"]}),
        ("{ask} the sounds in this clip {order}.", {
            "ask": ["List", "Describe"], "order": ["in the order they occur", "from loudest to quietest",
                                                   "and say which one dominates"]}),
        ("Is there any {what} in this audio?", {"what": [
            "animal", "vehicle", "water", "music", "speech", "alarm", "wind", "crowd", "machinery", "impact sound"]}),
    ]),
    "music": (["music"], [
        ("What is the {attr} of this music?", {"attr": [
            "genre", "tempo", "key", "mood", "main instrument", "style", "rhythm", "time signature", "energy level",
            "harmonic character"]}),
        ("{ask} the instruments {where}.", {
            "ask": ["Identify", "List", "Describe"], "where": ["you hear", "in this piece", "playing in this clip"]}),
        ("Describe this piece of music {focus}.", {"focus": [
            "in terms of genre and mood", "for a music critic", "for a playlist description", "in one sentence",
            "including its tempo and key", "for a beginner"]}),
        ("Would this music suit {use}? Why?", {"use": [
            "a film scene", "a workout", "studying", "a wedding", "a video game", "a relaxing evening", "a dance party",
            "a commercial"]}),
        ("Is this music {pair}?", {"pair": [
            "fast or slow", "in a major or a minor key", "acoustic or electronic", "happy or sad",
            "vocal or instrumental", "calm or energetic"]}),
        ("How does this music make you feel{tail}?", {"tail": ["", ", and why", "? Answer briefly"]}),
        ("Which {what} would you associate with this music?", {"what": [
            "era", "country", "film genre", "colour", "season", "dance"]}),
    ]),
    "reasoning": (ALL, [
        ("{ask} {topic}", {
            "ask": ["Based on what you hear,", "Think step by step:", "Reasoning from the audio,",
                    "Using clues in the audio,"],
            "topic": ["where might this recording have been made?", "what might happen next?",
                      "what is the most likely situation?", "who is the likely audience?",
                      "why might someone record this?", "what time of day could it be?",
                      "what is the purpose of this audio?", "what can you infer about the setting?"]}),
        ("What is unusual or notable about this audio{tail}?", {"tail": ["", ", if anything", "? Justify it"]}),
        ("If you had to {task} based on this audio, what would you say?", {"task": [
            "guess the location", "guess the occasion", "guess what happened just before", "label its mood",
            "rate its audio quality", "pick a category for it", "explain it to a child"]}),
        ("Compare this audio with {ref}. What is similar and what is different?", {"ref": [
            "a typical phone call", "a quiet library", "a busy street", "a concert", "a podcast"]}),
        ("Could this audio be {what}? Explain your reasoning.", {"what": [
            "from a film", "recorded by a phone", "part of a news broadcast", "an advertisement", "a live recording",
            "computer generated"]}),
    ]),
    "creative": (ALL, [
        ("Write a {form} inspired by this audio.", {"form": [
            "short poem", "haiku", "limerick", "short story", "diary entry", "song verse", "tweet", "movie scene",
            "riddle", "two-line dialogue", "news headline", "product review"]}),
        ("Imagine {who}. {ask}", {
            "who": ["you are standing where this was recorded", "you are a radio host introducing this clip",
                    "this audio is from a film", "you are describing this to a friend"],
            "ask": ["What do you say?", "Describe the scene.", "Write two sentences."]}),
        ("Continue the scene suggested by this audio in {n}.", {
            "n": ["one sentence", "three sentences", "a short paragraph"]}),
        ("Give this audio {what}.", {"what": [
            "a creative title", "a hashtag", "a one-line slogan", "a name for a sound library", "an emoji summary",
            "a short film pitch"]}),
        ("Write a {tone} {form} about what you hear.", {
            "tone": ["funny", "dramatic", "mysterious", "cheerful"],
            "form": ["sentence", "story opening", "social media post", "postcard message"]}),
    ]),
    "format": (ALL, [
        ("{ask} Answer {fmt}.", {
            "ask": ["Describe the audio.", "What do you hear?", "Summarize this clip.",
                    "What are the key characteristics of this audio?", "What is the main content of this clip?",
                    "How would you label this audio?"],
            "fmt": ["in exactly three bullet points", "in under 20 words", "in JSON with keys \"summary\" and "
                    "\"details\"", "in all capital letters", "in a single sentence", "as a numbered list",
                    "in lowercase only", "without using the letter e where possible", "in two short paragraphs",
                    "starting with the word \"Audio\""]}),
        ("List {n} {what} about this audio{how}.", {
            "n": ["three", "five", "two"], "what": ["facts", "adjectives", "keywords"],
            "how": ["", ", comma separated", ", one per line"]}),
        ("Give a one-word answer: {q}", {"q": [
            "what is the overall mood of this audio?", "is this recording indoors or outdoors?",
            "what is the main sound?", "is the audio calm or intense?"]}),
    ]),
    # Short answers naming the clip's labelled attributes (each prompt only for clips labelled with what it asks):
    # the densest audio-grounded targets. Uniform weight by default; generate.category_weights can raise it.
    "labels": (ALL, [
        # "What is/are ..." wording: the 135M generator copies the label from the description (47-48 of 48 right
        # on demo clips); "male or female?" wording made it echo an option ("The speaker is a male", 1 in 4 wrong)
        ("{ask} Answer in a few words.", {"ask": [
            "What is the speaker's gender?", "State the speaker's gender."]}, ("gender",)),
        ("{ask} Answer briefly.", {"ask": [
            "What are the speaker's gender and accent?", "What is the speaker's gender and accent?",
            "Identify the speaker's gender and accent."]}, ("gender", "accent")),
        ("What are the speaker's gender and speaking speed? Answer briefly.", {}, ("gender", "speaking_speed")),
        ("What are the speaker's gender, voice pitch and speaking speed? Answer briefly.", {},
         ("gender", "pitch", "speaking_speed")),
        ("What are the speaker's gender, accent and voice pitch? Answer briefly.", {}, ("gender", "accent", "pitch")),
        ("{ask} Answer briefly.", {"ask": [
            "What is the speaker's gender, and what can be heard in the background?",
            "What is the speaker's gender, and what is the background sound?"]}, ("gender", "background")),
        ("{ask} Answer in a few words.", {"ask": [
            "What sound is this?", "Name the main sound source.", "Which sound event can be heard?",
            "What is making this sound?"]}, ("sound_labels",)),
        ("{ask} Answer briefly.", {"ask": [
            "Which instrument is playing?", "Name the instrument in this music.", "What instrument do you hear?"]},
         ("music_instrument",)),
        ("Which instrument is playing, and is the music fast or slow? One short sentence.", {},
         ("music_instrument", "music_tempo_bpm")),
        ("Is this music in a major or a minor key, and which instrument plays it? One short sentence.", {},
         ("music_instrument", "music_mode")),
    ]),
}


def expand() -> list[dict]:
    """Templates x slots -> unique prompts in template order, with sequential ids p0001, p0002, ..."""
    seen: set[str] = set()
    rows: list[dict] = []
    for category, (domains, templates) in TEMPLATES.items():
        for template, slots, *more in templates:
            requires = list(more[0]) if more else []
            keys = list(slots)
            for values in itertools.product(*(slots[k] for k in keys)):
                text = " ".join(template.format(**dict(zip(keys, values, strict=True))).split())
                if text in seen:
                    continue
                seen.add(text)
                row = {"id": f"p{len(rows) + 1:04d}", "category": category, "domains": domains, "text": text}
                rows.append(row | {"requires": requires} if requires else row)
    return rows


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only compare with the shipped file")
    ap.add_argument("--out", type=Path, default=POOL_PATH)
    args = ap.parse_args(argv)
    text = render(expand())
    if args.check:
        same = args.out.is_file() and args.out.read_text() == text
        print(f"{args.out}: {'up to date' if same else 'OUT OF DATE: run python -m desta.selfgen.build_pool'}")
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"{args.out}: {text.count(chr(10))} prompts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
