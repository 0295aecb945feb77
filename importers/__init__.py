"""Converters from other toolkits' checkpoints into ours (``speech-transformer import ...``)."""

from __future__ import annotations


class ImportFailure(ValueError):
    """The source cannot become a checkpoint of ours; the message is one line naming the file or config field."""
