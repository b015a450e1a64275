"""The kernel interface between the engines, the policies and the live runtime: the state layout
(`layout`), the hooks a policy implements (`hooks`), the helpers it may call (`helpers`), the policy stack
as the core sees it (`stack`). `engines/`, `policies/` and `live/` import it; it imports none of them.

Importing it first installs numba's cache keying (`cache`), so no jitted function of the engines or the
policies can load a cache entry compiled against other interface sources."""

from . import cache as _cache

_cache.install()
