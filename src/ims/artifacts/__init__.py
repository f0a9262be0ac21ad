"""S3 artifacts through boto3: links, manifests, moves, presigned URLs, streaming uploads with md5."""
