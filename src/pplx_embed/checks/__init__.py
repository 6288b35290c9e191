"""Every rule for user input, one module per rule, each applied once at the edge that receives the input.

* :mod:`~pplx_embed.checks.texts`     – texts and contextual documents (→ :class:`Texts`, :class:`Documents`),
  truncation.
* :mod:`~pplx_embed.checks.precision` – output quantization and Matryoshka dimensions.
* :mod:`~pplx_embed.checks.items`     – index item ids and metadata.
* :mod:`~pplx_embed.checks.filters`   – metadata equality filters.

A check returns the checked value (a :class:`Texts` is *known* to be valid, so code below the edge takes it
without checking again) or raises :class:`~pplx_embed.errors.InputError` with the one message the Python
API, the command line and the HTTP server all show.
"""

from pplx_embed.checks.filters import Filter, check_filter
from pplx_embed.checks.items import check_ids, check_metadata
from pplx_embed.checks.precision import QUANTIZATIONS, check_dimensions, check_quantization
from pplx_embed.checks.texts import Documents, Texts, check_documents, check_texts, check_truncation, check_unicode

__all__ = ["QUANTIZATIONS", "Documents", "Filter", "Texts", "check_dimensions", "check_documents", "check_filter",
           "check_ids", "check_metadata", "check_quantization", "check_texts", "check_truncation", "check_unicode"]
