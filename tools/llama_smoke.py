"""Load a GGUF file in llama.cpp (llama-cpp-python) and answer a fixed prompt.

    python tools/llama_smoke.py MODEL.gguf [--prompt TEXT] [--tokens N]

Greedy decoding (temperature 0) on 2 threads, so the same file always gives
the same text. Exit status 1 if the model does not load or produces nothing.
"""
import argparse
import sys

from llama_cpp import Llama


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--prompt", default="What is the capital of France? Answer in one sentence.")
    ap.add_argument("--tokens", type=int, default=48)
    a = ap.parse_args()
    llm = Llama(model_path=a.model, n_ctx=512, n_threads=2, seed=0, verbose=False)
    out = llm.create_chat_completion(
        messages=[{"role": "user", "content": a.prompt}],
        max_tokens=a.tokens, temperature=0.0, top_k=1,
    )
    text = out["choices"][0]["message"]["content"].strip()
    print(f"prompt: {a.prompt}")
    print(f"answer: {text}")
    return 0 if text else 1


if __name__ == "__main__":
    sys.exit(main())
