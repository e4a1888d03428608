"""Shared code for the SFT, DPO, S-DPO and inference entry scripts."""
