"""Cost as the data grows: peak RSS and samples/s at 1x, 4x, 16x a base dataset, per domain,
with the data held in memory or on disk.

The recipe field (the same name and values in every domain's ``data`` section):

    data.storage: memory | disk | auto      # default: auto
      memory  the splits are read whole (pandas frames / lists / decoded arrays in RAM), as before
      disk    rows live in memory-mapped files under the cache folder ($OMNITUNE_CACHE, default
              ~/.cache/omnitune), keyed by a content hash of the source and the preparation
              settings; __getitem__ reads a row on demand, so RSS does not grow with the data
      auto    disk when the source files hold more than omnitune.core.data.AUTO_DISK_BYTES
              (256 MiB), else memory; the choice is written to the DataReport notes
              ("data.storage auto: disk (...)") and so to metrics.json and the console
    The helpers are in omnitune.core.data: ``Storage`` (the Literal type for a DataConfig field),
    ``AUTO_DISK_BYTES``, ``source_bytes(paths)``, ``choose_storage(storage, nbytes, report)``.

Result rows (one per domain x size x storage), the same keys in every domain:
    domain, size, storage, rows, peak_rss_mb, samples_per_s, prepare_s, steps

    python bench/data_scaling.py --domain text --sizes 1,4,16
    python bench/data_scaling.py --domain all --out bench/results/
"""
