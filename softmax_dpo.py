"""S-DPO: teach an SFT adapter to rank the true title above --neg_num sampled candidates at once.

--loss_type dpo or dmpo trains the same examples with pairwise DPO or DMPO instead. See
trainer/preference_stage.py for what is written to --output_dir.
"""

from trainer.cli import run
from trainer.commands import command
from trainer.preference_stage import PreferenceFlags, train_preference

softmax_dpo = command(PreferenceFlags)(train_preference)

if __name__ == "__main__":
    run(softmax_dpo)
