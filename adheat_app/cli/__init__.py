"""Command line: :mod:`.parser` builds the BIDS-App arguments, :mod:`.run` validates and dispatches."""
