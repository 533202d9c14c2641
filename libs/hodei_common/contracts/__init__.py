"""Wire contracts shared by producers and consumers: subject names and msgspec schemas."""
