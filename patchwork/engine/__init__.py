"""Running a study: plan units, compute them here or on Dask, write them to the store, resume
(:mod:`~patchwork.engine.runner`); one run per store (:mod:`~patchwork.engine.lock`).

May import every room below (``methods`` and down); nothing imports it but ``cli`` and the
package's public names.
"""
