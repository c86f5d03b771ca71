"""The command-line options of every command that loads a model (`codegen generate`, `translate`,
`eval`), in one place for the top-level and the evaluation parsers; argparse only, so `--help`
stays fast."""
import argparse


def add_load_arguments(parser) -> None:
    """The options of every command that loads a model, as `Predictor` takes them."""
    parser.add_argument("--device", default=None, help="cpu, gpu or gpu:N (default: gpu if available)")
    parser.add_argument("--quantize", default=None, choices=["int8"],
                        help="int8 weights (quantized while loading, unless the checkpoint already is)")
    parser.add_argument("--use-fp16-decoding", action="store_true",
                        help="fp16 weights (on CPU read at half the bytes with fp32 arithmetic; on GPU all fp16)")
    parser.add_argument("--use-fast", action=argparse.BooleanOptionalAction, default=None,
                        help="the fused CPU kernels (default: when they build here)")
    parser.add_argument("--tensor-parallel", type=int, default=None, metavar="N",
                        help="under python -m paddle.distributed.launch, split the model over its N processes "
                        "(default: all of them; 1 turns the split off)")


def load_options(args) -> dict:
    """`Predictor`'s keyword arguments from `add_load_arguments`' flags."""
    return dict(device=args.device, quantize=args.quantize, use_fast=args.use_fast,
                use_fp16_decoding=args.use_fp16_decoding, tensor_parallel=args.tensor_parallel)
