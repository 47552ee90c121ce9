"""robustaudit service side: the console script now; the HTTP API later."""
