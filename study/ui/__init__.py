"""`flowctl ui`: a local, read-only web dashboard of the runs under a checkpoint root.

`server` is the HTTP plumbing (standard library only), `api` the JSON views built on
study.runs, `resolve` the one place where a name from a URL becomes a path, `metrics_feed`
the incremental metrics.csv reader, `checkpoint_view` the on-demand checkpoint summary,
and `static/` the page itself (HTML, CSS, JS; no CDN). No torch import, except inside
checkpoint_view when a run page asks for its checkpoint.
"""
