"""Pairwise DPO: teach an SFT adapter to prefer the true title over one sampled candidate.

The same stage as softmax_dpo.py with --loss_type dpo and --neg_num 1 as defaults; with k = 1,
S-DPO and DPO are the same loss. See trainer/preference_stage.py for what is written to --output_dir.
"""

import dataclasses

from trainer.cli import run
from trainer.commands import command
from trainer.preference_stage import PreferenceFlags, train_preference


@dataclasses.dataclass
class DPOFlags(PreferenceFlags):
    output_dir: str = "output/dpo"
    loss_type: str = "dpo"
    neg_num: int = 1


dpo = command(DPOFlags, "Pairwise DPO of a LoRA adapter: the true title against one other candidate "
                        "(--neg_num 1).")(train_preference)

if __name__ == "__main__":
    run(dpo)
