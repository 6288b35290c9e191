"""pplx-embed inside the RAG frameworks: LangChain, LlamaIndex and Haystack classes.

Each framework module (``langchain``, ``llama_index``, ``haystack``) imports its framework and is
imported only by users of it (``pip install 'pplx-embed[langchain]'`` …). What they share lives here:

* :mod:`~pplx_embed.integrations.source` — where vectors come from: an in-process ``Embedder``
  (loaded on first use, options as ``EmbedderOptions``) or a pplx-embed server / the hosted
  Perplexity API (``base_url`` + ``api_key``), sync and async, in ``float``, ``int8`` or ``binary``.
* :mod:`~pplx_embed.integrations.collection` — a ``pplx_embed.index`` index at any location as the
  frameworks' stores use it: created on first write, vectors taken in the source's precision,
  equality filters, contextual (late-chunked) documents whose chunks keep their document id,
  position and character offsets.
"""
