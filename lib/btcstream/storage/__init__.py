"""Storage under the storage root: filesystems, the committed-file manifest, and readers."""
