#!/bin/sh
# Create the pipeline's buckets on the S3 store (idempotent). Used by the s3-init service of docker-compose.yml.
set -eu
mc alias set store http://s3:9000 "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY"
for b in $BUCKETS; do mc mb --ignore-existing "store/$b"; done
