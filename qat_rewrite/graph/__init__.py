"""The only package that knows TF graph internals: views, patterns, matching, editing."""
