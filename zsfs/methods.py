"""Facts about the fit methods that code without torch needs: the report reads old and new runs
with them, and importing the fit (``zsfs.fit``, which imports torch) would cost it 3 s and 480 MB.
The fit takes them from here."""

METHOD_CHOICES = ("balanced", "cycles")
"""Self-training: transductive class-balanced (zsfs.fit.transductive) or the paper's candidate cycles."""
PROMPT_CHOICES = ("ensemble", "single")
"""Class text embeddings: the 80-template ensemble or the single 'a photo of a {}'."""

CYCLES_ONLY = ("accumulate", "epochs", "max_cycles", "loss_floor")
"""Parameters only the cycles method reads (the balanced one trains fresh heads in its 3 cycles)."""
BALANCED_ONLY = ("keep_all_classes",)
UNREAD_BY = {"balanced": CYCLES_ONLY, "cycles": BALANCED_ONLY}
"""Each method's parameters it never reads."""

ABSENT_SHARE = 0.02
"""A class is absent when its estimated share is below ``ABSENT_SHARE / C`` (a fiftieth of an even
share). A false report drops a present class whole (never predicted), a missed one only takes some
images: at a twentieth, 2 of 24 real-data draws reported a present class (docs/fit.md)."""

MAX_OOD_MULTIPLIER = 100.0
"""The largest m of the paper score's thresholds (seed mean - m x std): at 100 standard deviations
below the seeds' mean no image is flagged already; far larger ones overflowed to no threshold."""
