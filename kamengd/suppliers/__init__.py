"""Upstream docking (对接): this shop buys from another kamengd through its agent API."""
