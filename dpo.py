"""Pairwise DPO: teach an SFT adapter to prefer the true title over one sampled candidate.

The same stage as softmax_dpo.py with --loss_type dpo and --neg_num 1 as defaults; with k = 1,
S-DPO and DPO are the same loss. See trainer/preference.py for what is written to --output_dir.
"""

from trainer.cli import run, with_defaults
from trainer.preference import train_preference

dpo = with_defaults(
    train_preference,
    "Pairwise DPO of a LoRA adapter: the true title against one other candidate (--neg_num 1).",
    loss_type="dpo",
    neg_num=1,
    output_dir="output/dpo",
)

if __name__ == "__main__":
    run(dpo)
