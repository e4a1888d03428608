"""Convert a dataset in the LLaRA layout (the S-DPO paper's LastFM, Steam, MovieLens folders) into the
train.json, valid.json and test.json every stage reads; the formats and the candidate draw are
described in dataprep/llara_layout.py.

Usage:
    python data/prepare.py --source data/lastfm-source --output_dir data/lastfm
"""

from trainer.cli import run
from dataprep.llara_layout import prepare

if __name__ == "__main__":
    run(prepare)
