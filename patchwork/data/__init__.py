"""Media and samples: decoded audio and frames (:mod:`~patchwork.data.media`; video containers,
their soundtracks and sound files: :mod:`~patchwork.data.containers`), the media of one run
(:class:`~patchwork.data.sample.RunMedia`), a sample's model inputs per run
(:class:`~patchwork.data.sample.Sample`) and a lazily loaded list of samples
(:class:`~patchwork.data.source.SampleSource`).

Knows nothing of models: an adapter turns media into inputs. May import: ``errors``, ``study``.
"""
