"""The collector (DESIGN §1): answers tracking calls once their record is on disk."""
