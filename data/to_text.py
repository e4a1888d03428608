"""Write a LLaRA-layout folder's pickled splits (*_data.df) as plain text (*_data.tsv), beside a copy of its
title file: the form data/lastfm-source/ ships in, which data/prepare.py reads without unpickling anything.
The format is described in dataprep/llara_files.py.

Usage (how data/lastfm-source/ was made):
    python data/to_text.py --source ../shared/data/lastfm --output_dir data/lastfm-source
"""

from trainer.cli import run
from dataprep.llara_files import to_text

if __name__ == "__main__":
    run(to_text)
