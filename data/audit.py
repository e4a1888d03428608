"""Audit a data folder for leaks: rules that need no model, scored on its validation and test splits
with counts from its training split; the rules and the flagging margin are described in trainer/audit.py.

Prints one table (each rule's HR@1 with its 95% interval, its gain over the popularity rule) and one
verdict line per kind of leak; writes OUTPUT_DIR/audit.json and audit.md. Exits 0 whatever it finds.

Usage:
    python data/audit.py --data_dir data/lastfm --output_dir output/audit
"""

from trainer.audit import audit_command
from trainer.cli import run

if __name__ == "__main__":
    run(audit_command)
