"""`speculoos-generate`: speculative generation over a dataset, one JSON record per prompt (see
`speculoos_hf.dataset_generation` for the record format, resuming and the multi-process merge).

    speculoos-generate --target Qwen/Qwen2.5-Coder-7B-Instruct --draft Qwen/Qwen2.5-Coder-0.5B-Instruct \\
        --input prompts.jsonl --output out.jsonl --max-new-tokens 256 --chat-template
    accelerate launch --num_processes 8 -m speculoos_hf.cli_generate --target ... --input ... --output ...
    # CPU-only machines: accelerate launch --multi_gpu --num_processes 2 -m speculoos_hf.cli_generate ...
"""

from __future__ import annotations

import argparse
import sys

import torch

from .dataset_generation import distributed_state, generate_dataset
from .placement import placement_kwargs, placement_summary


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="speculoos-generate",
        description="Generate a completion for every prompt of a JSONL file or dataset with exact speculative "
        "decoding; one JSON record per prompt, in input order. Resumable; runs on N processes under "
        "`accelerate launch`.",
    )
    p.add_argument("--target", required=True, help="hub id, local directory or offline alias (speculoos_hf.models)")
    p.add_argument("--draft", default=None, help="hub id, local directory or offline alias; omit for the target alone")
    p.add_argument("--tokenizer", default=None, help="tokenizer (default: the target's)")
    p.add_argument("--input", required=True,
                   help="JSONL file ({'prompt': ..., 'id': ...} per line), a directory saved by datasets' "
                   "save_to_disk, or a dataset name for datasets.load_dataset")
    p.add_argument("--split", default="train", help="dataset split for --input given as a dataset name")
    p.add_argument("--output", required=True, help="output JSONL file (resumed if it exists)")
    p.add_argument("--prompt-field", default="prompt")
    p.add_argument("--id-field", default="id")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--do-sample", action="store_true", help="sample (default: greedy, as generate())")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--stop", nargs="*", default=None, metavar="STRING", help="stop strings")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-draft-tokens", type=int, default=None,
                   help="draft tokens per round (default: generate()'s, 'auto'); a fixed K makes sampled records "
                   "reproducible across runs and process counts")
    p.add_argument("--draft-confidence-threshold", type=float, default=None,
                   help="dynamic lookahead: stop drafting once the draft is less sure than this")
    template = p.add_mutually_exclusive_group()
    template.add_argument("--chat-template", dest="chat_template", action="store_true",
                          help="wrap each prompt as a user message in the tokenizer's chat template")
    template.add_argument("--no-chat-template", dest="chat_template", action="store_false",
                          help="feed prompts as they are (the default; message-list prompts always use the template)")
    p.set_defaults(chat_template=False)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retry-errors", action="store_true", help="on resume, redo records that have an error")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32", "auto"])
    p.add_argument("--device", default=None,
                   help="device for both models (default: this process's device under accelerate, else cuda if "
                   "available, else cpu)")
    p.add_argument("--target-device-map", default=None,
                   help="accelerate placement of the target: auto, balanced, sequential (spreads it over devices "
                   "and offloads what does not fit)")
    p.add_argument("--target-max-memory", default=None,
                   help="memory budget per device for the target, e.g. 'cpu=2GiB' or '0=20GiB,cpu=60GiB'; what "
                   "does not fit goes to --offload-folder (implies --target-device-map auto)")
    p.add_argument("--offload-folder", default=None, help="where offloaded target weights go (disk)")
    p.add_argument("--draft-int8", action="store_true", help="int8 copy of the draft (CPU only)")
    p.add_argument("--no-progress", action="store_true")
    return p


def _load_data(args):
    from pathlib import Path

    path = Path(args.input)
    if path.is_file():
        return str(path)
    import datasets

    if path.is_dir():
        data = datasets.load_from_disk(str(path))
        return data[args.split] if isinstance(data, datasets.DatasetDict) else data
    return datasets.load_dataset(args.input, split=args.split)


def main(argv=None) -> int:
    from .generation import enable_speculative
    from .models import load_model, load_tokenizer

    args = parser().parse_args(argv)
    state = distributed_state()
    dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    device = args.device or str(state.device)
    offload = placement_kwargs(device_map=args.target_device_map, max_memory=args.target_max_memory)
    if offload:  # what fits nowhere goes to disk; each process offloads to its own folder
        folder = args.offload_folder or args.output + ".offload"
        offload["offload_folder"] = folder if state.num_processes == 1 else f"{folder}/rank{state.process_index}"
    target = enable_speculative(load_model(args.target, dtype=dtype, **(offload or placement_kwargs(device=device))))
    draft = None
    if args.draft is not None:
        draft = load_model(args.draft, dtype=dtype, **placement_kwargs(device="cpu" if args.draft_int8 else device))
        if args.draft_int8:
            from .drafters import int8_draft

            draft = int8_draft(draft)
    tokenizer = load_tokenizer(args.tokenizer or args.target)
    if state.is_main_process and offload:
        shares = ", ".join(f"{k} {v:.0%}" for k, v in placement_summary(target).items())
        print(f"target placement: {shares}", file=sys.stderr)

    summary = generate_dataset(
        target,
        draft,
        tokenizer,
        _load_data(args),
        args.output,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        batch_size=args.batch_size,
        num_draft_tokens=args.num_draft_tokens,
        draft_confidence_threshold=args.draft_confidence_threshold,
        chat_template=args.chat_template,
        stop_strings=args.stop,
        seed=args.seed,
        prompt_field=args.prompt_field,
        id_field=args.id_field,
        retry_errors=args.retry_errors,
        progress=not args.no_progress,
        state=state,
    )
    if state.is_main_process:
        print(summary, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
