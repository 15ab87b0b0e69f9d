"""Reports: one execution rendered as JSON, Markdown and HTML (rendering only, no handlers)."""
