"""Files (seed: File): the store (records in Redis, the bytes behind blobs.Blobs: this disk, or
the file server at FILES_URL) as the fast copy, and its S3 mirror (the durable copy).

Local layout: DATA_DIR/files/<id[-2:]>/<id> for stored files, DATA_DIR/tmp/ for uploads in
progress, DATA_DIR/trash/<id> for deleted files waiting to be moved to the S3 trash.
S3 layout: s3://S3_BUCKET/files/<username>/<id>; deleted or overwritten objects move to
s3://S3_TRASH_BUCKET/files/<username>/<id>, where a lifecycle rule expires them after 30 days.
"""
