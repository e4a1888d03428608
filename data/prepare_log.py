"""Convert a raw timed interaction log and an item-title table into the records every stage reads,
the way LLaRA builds its sets (k-core, sliding windows, a time or user split; dataprep/interaction_log.py).

Usage (MovieLens 100K: u.data is `user<TAB>item<TAB>rating<TAB>timestamp`, u.item `id|title|...`):
    python data/prepare_log.py --interactions ml-100k/u.data --columns user,item,rating,time \\
        --items ml-100k/u.item --items_separator '|' --items_columns id,title --encoding latin-1 \\
        --title_format movielens --output_dir data/movielens
"""

from trainer.cli import run
from dataprep.interaction_log import prepare_log

if __name__ == "__main__":
    run(prepare_log)
