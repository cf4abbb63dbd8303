"""Named data sets: the shared sets (:mod:`~crystalframer.data.sources.shared`), CrystalFramer's published sets
and official splits (:mod:`~crystalframer.data.sources.published`), Matbench task files
(:mod:`~crystalframer.data.sources.matbench`)."""
