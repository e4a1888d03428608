"""Dataset conversion: the LLaRA layout and raw interaction logs into the JSON records the stages read.

Run through data/prepare.py, data/prepare_log.py and data/to_text.py; the record format is data/README.md's.
"""
