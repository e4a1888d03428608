"""S-DPO: teach an SFT adapter to rank the true title above --neg_num sampled candidates at once.

--loss_type dpo or dmpo trains the same examples with pairwise DPO or DMPO instead. See
trainer/preference.py for what is written to --output_dir.
"""

from trainer.cli import run
from trainer.preference import train_preference

if __name__ == "__main__":
    run(train_preference)
