"""What AnyUp and JAFAR share (private): the full-resolution encoders run in chunks with
exact whole-image GroupNorm statistics (:mod:`.encoder`, :mod:`.encoded`) and the
upsampler base that evaluates any band of output rows (:mod:`.upsampler`)."""
