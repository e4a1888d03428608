"""Supervised fine-tuning with LoRA: prompt -> true title, loss on the answer tokens only.

See trainer/sft_stage.py for what is written to --output_dir.
"""

from trainer.cli import run
from trainer.commands import command
from trainer.sft_stage import SFTFlags, train_sft

sft = command(SFTFlags)(train_sft)

if __name__ == "__main__":
    run(sft)
