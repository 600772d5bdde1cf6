"""A Flower app (ServerApp + ClientApp) with byzance's robust aggregation."""
