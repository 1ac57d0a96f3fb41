"""The passes of the data flow, each runnable on its own: match, factorize, prune, recompile."""
