"""`speculoos-generate`: speculative generation over a dataset, one JSON record per prompt (docs/dataset.md: the
record format, resuming and the multi-process merge).

    speculoos-generate --target Qwen/Qwen2.5-Coder-7B-Instruct --draft Qwen/Qwen2.5-Coder-0.5B-Instruct \\
        --input prompts.jsonl --output out.jsonl --max-new-tokens 256 --chat-template
    accelerate launch --num_processes 8 -m speculoos_hf.cli_generate --target ... --input ... --output ...
    # CPU-only machines: accelerate launch --multi_gpu --num_processes 2 -m speculoos_hf.cli_generate ...

Every option is checked before any model is loaded and before any file is created: a bad value exits with status 2
and one line naming the option. Then the output's lock is taken (one run writes an output), the input read and the
output checked to hold this input's records made with these options, all before the models load.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from .cli_checks import (OneLineParser, device_problem, file_problem, int_at_least, model_problem, number_in,
                         placement_problems, positive_number, refuse_first, tokenizer_problem)
from .dataset import DatasetJob, DatasetRun, ForeignOutputError, close_group, distributed_state
from .dataset.lock import OutputBusyError
from .dataset.option_checks import OptionError
from .dataset.source import input_problem, open_input
from .dataset.store import OutputPathError
from .drafters import int8_draft
from .glue.generation import enable_speculative
from .glue.models import load_model, load_tokenizer, resolve_alias
from .glue.placement import placement_kwargs, placement_summary

PROG = "speculoos-generate"


def parser() -> OneLineParser:
    p = OneLineParser(
        prog=PROG,
        description="Generate a completion for every prompt of a JSONL file or dataset with exact speculative "
        "decoding; one JSON record per prompt, in input order. Resumable; runs on N processes under "
        "`accelerate launch`.",
    )
    _data_options(p)
    _generation_options(p)
    _model_options(p)
    p.add_argument("--no-progress", action="store_true")
    return p


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True,
                   help="JSONL file ({'prompt': ..., 'id': ...} per line), a directory saved by datasets' "
                   "save_to_disk, or a dataset name for datasets.load_dataset")
    p.add_argument("--split", default=None,
                   help="the split of a dataset (a name, or a saved DatasetDict); default: train")
    p.add_argument("--output", required=True, help="output JSONL file (resumed if it exists)")
    p.add_argument("--prompt-field", default="prompt")
    p.add_argument("--id-field", default="id")
    p.add_argument("--retry-errors", action="store_true", help="on resume, redo records that have an error")
    template = p.add_mutually_exclusive_group()
    template.add_argument("--chat-template", dest="chat_template", action="store_true",
                          help="wrap each prompt as a user message in the tokenizer's chat template")
    template.add_argument("--no-chat-template", dest="chat_template", action="store_false",
                          help="feed prompts as they are (the default; message-list prompts always use the template)")
    p.set_defaults(chat_template=False)


def _generation_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int_at_least(1), default=128)
    p.add_argument("--do-sample", action="store_true", help="sample (default: greedy, as generate())")
    p.add_argument("--temperature", type=positive_number, default=None, help="> 0, with --do-sample (default 1)")
    p.add_argument("--top-p", type=number_in(0, 1, closed_low=False), default=None,
                   help="in (0, 1], with --do-sample (default 1)")
    p.add_argument("--top-k", type=int_at_least(0), default=None, help=">= 0, with --do-sample (default: off)")
    p.add_argument("--stop", nargs="+", default=None, metavar="STRING", help="stop strings")
    p.add_argument("--batch-size", type=int_at_least(1), default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-draft-tokens", type=int_at_least(1, also=("auto",)), default=None,
                   help="draft tokens per round, an integer >= 1 or 'auto' (the default, generate()'s: a cost model "
                   "picks each round's K); a fixed K makes sampled records reproducible across runs and process "
                   "counts")
    p.add_argument("--draft-confidence-threshold", type=number_in(0, 1, closed_high=False), default=None,
                   help="dynamic lookahead: stop drafting once the draft is less sure than this (in [0, 1))")
    p.add_argument("--prompt-lookup", type=int_at_least(1), default=None, metavar="N",
                   help="draft up to N tokens copied from the context (prompt lookup; with --draft: hybrid)")
    p.add_argument("--suffix-cache", nargs="?", const=True, default=None, metavar="PATH",
                   help="draft from earlier prompts and outputs through one SuffixCache for the whole run; with "
                   "PATH, load it from there if the file exists and save it there at the end")


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="hub id, local directory or offline alias (speculoos_hf.glue.models)")
    p.add_argument("--draft", default=None, help="hub id, local directory or offline alias; omit for the target alone")
    p.add_argument("--tokenizer", default=None, help="tokenizer (default: the target's)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                   help="weights' dtype (default: auto, the checkpoint's own, as from_pretrained; offline aliases: "
                   "bfloat16)")
    p.add_argument("--device", default=None,
                   help="device for both models (default: this process's device under accelerate, else cuda if "
                   "available, else cpu)")
    p.add_argument("--target-device-map", default=None,
                   help="accelerate placement of the target: auto, balanced, balanced_low_0, sequential, a device, "
                   "or a JSON object {module: device} (spreads it over devices and offloads what does not fit)")
    p.add_argument("--target-max-memory", default=None,
                   help="memory budget per device for the target, e.g. 'cpu=2GiB' or '0=20GiB,cpu=60GiB'; what "
                   "does not fit goes to --offload-folder (implies --target-device-map auto)")
    p.add_argument("--offload-folder", default=None, help="where offloaded target weights go (disk; default "
                   "<output>.offload)")
    p.add_argument("--draft-int8", action="store_true", help="int8 copy of the draft (CPU only)")


FLAGS = {"prompt_lookup_num_tokens": "--prompt-lookup", "stop_strings": "--stop", "model": "--target"}


def flag_of(option: str) -> str:
    """The command-line flag of a DatasetJob option."""
    return FLAGS.get(option, "--" + option.replace("_", "-"))


def job_from_args(args) -> DatasetJob:
    """The run's options, validated (OptionError names the bad one)."""
    return DatasetJob(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        batch_size=args.batch_size,
        num_draft_tokens=args.num_draft_tokens,
        draft_confidence_threshold=args.draft_confidence_threshold,
        prompt_lookup_num_tokens=args.prompt_lookup,
        suffix_cache=args.suffix_cache,
        chat_template=args.chat_template,
        stop_strings=args.stop,
        seed=args.seed,
        prompt_field=args.prompt_field,
        id_field=args.id_field,
        retry_errors=args.retry_errors,
        progress=not args.no_progress,
        model=model_name(args),
    )


def model_name(args) -> str:
    """What generates the records, as the command line names it (stored with the options in every record)."""
    tokenizer = f" --tokenizer {args.tokenizer}" if args.tokenizer else ""
    return f"--target {args.target}{tokenizer} --dtype {args.dtype}"


def value_problems(args):
    """(flag, why the value is bad, or None) for every value that needs more than its type, one at a time."""
    yield "--output", file_problem(args.output)
    yield "--input", input_problem(args.input)
    yield "--target", model_problem(args.target)
    if args.draft is not None:
        yield "--draft", model_problem(args.draft)
    if args.draft_int8 and args.draft is None:
        yield "--draft-int8", "needs --draft"
    if args.tokenizer is not None:
        yield "--tokenizer", tokenizer_problem(args.tokenizer)
    if args.device is not None:
        yield "--device", device_problem(args.device)
    yield from placement_problems(args.target_max_memory, args.offload_folder, args.target_device_map,
                                  has_device_map=True)


def _dtype(choice: str, name: str):
    """`--dtype` for one model: "auto" is from_pretrained's own (the checkpoint's dtype); the offline aliases are
    converted from GGUF into a cache kept in a concrete dtype, bfloat16 (their original checkpoints' dtype)."""
    if choice != "auto":
        return getattr(torch, choice)
    return torch.bfloat16 if resolve_alias(name) else "auto"


def _load_models(args, state):
    """(target, draft or None), placed as the options say."""
    device = args.device or str(state.device)
    offload = placement_kwargs(device_map=_device_map(args.target_device_map), max_memory=args.target_max_memory)
    if offload:  # what fits nowhere goes to disk; each process offloads to its own folder
        folder = args.offload_folder or args.output + ".offload"
        offload["offload_folder"] = folder if state.num_processes == 1 else f"{folder}/rank{state.process_index}"
    placement = offload or placement_kwargs(device=device)
    target = enable_speculative(load_model(args.target, dtype=_dtype(args.dtype, args.target), **placement))
    draft = None
    if args.draft is not None:
        draft_device = "cpu" if args.draft_int8 else device
        draft = load_model(args.draft, dtype=_dtype(args.dtype, args.draft), **placement_kwargs(device=draft_device))
        if args.draft_int8:
            draft = int8_draft(draft)
    if state.is_main_process and offload:
        shares = ", ".join(f"{k} {v:.0%}" for k, v in placement_summary(target).items())
        print(f"target placement: {shares}", file=sys.stderr)
    return target, draft


def _device_map(text: str | None):
    return json.loads(text) if text is not None and text.lstrip().startswith("{") else text


def _load_tokenizer(args):
    """The tokenizer, loaded before the models: a bad one is an OptionError naming --tokenizer (or --target)."""
    name = args.tokenizer or args.target
    try:
        return load_tokenizer(name)
    except Exception as e:  # noqa: BLE001 - any failure means this option cannot work
        raise OptionError("tokenizer" if args.tokenizer else "target",
                          f"cannot load a tokenizer from {name}: {type(e).__name__}: {e}") from None


def main(argv=None) -> int:
    """The command; exit status 0, or 2 with one line naming the option that is wrong (the output's problems name
    --output), before any model is loaded."""
    p = parser()
    args = p.parse_args(argv)
    try:
        job = job_from_args(args)
    except OptionError as e:
        p.refuse(flag_of(e.option), e.reason)
    refuse_first(p, value_problems(args))
    state = distributed_state()
    try:
        run = DatasetRun(open_input(args.input, args.split), args.output, job, state)
    except OptionError as e:
        p.refuse(flag_of(e.option), e.reason)
    except (ForeignOutputError, OutputPathError, OutputBusyError) as e:
        p.refuse("--output", str(e))
    with run:
        try:
            tokenizer = _load_tokenizer(args)
        except OptionError as e:
            p.refuse(flag_of(e.option), e.reason)
        target, draft = _load_models(args, state)
        summary = run.generate(target, draft, tokenizer)
    if state.is_main_process:
        print(summary, file=sys.stderr)
    close_group(state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
