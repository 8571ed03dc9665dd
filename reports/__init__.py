"""pagesim package."""
