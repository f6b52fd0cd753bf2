"""Rate limiting: plans with contract bursts, one atomic decision per request."""
