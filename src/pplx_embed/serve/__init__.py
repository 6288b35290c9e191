"""The embedding server: ``pplx_embed.serve.app.create_app(ServeConfig(...))`` and ``pplx-embed serve``.

Kept import-free so that the ``pplx-embed`` command line loads without the server's dependencies.
"""
