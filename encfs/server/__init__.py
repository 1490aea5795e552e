"""The encfs key server: a KMS-compatible service with least-privilege access.

It speaks the AWS KMS JSON 1.1 protocol (so boto3, the AWS CLI and encfs's
``aws-kms://`` provider work against it unchanged), verifies SigV4 on every
request, authorises with key policies and grants, keeps root keys wrapped
under a master key, and writes one hash-chained audit record per request.
docs/SERVER.md is the user's guide; the modules are:

- ``protocol``   the JSON 1.1 wire format, errors and botocore's model shapes
- ``sigv4``      request authentication (botocore's signer recomputes, we compare)
- ``policy``     key-policy evaluation (Deny wins, wildcards, conditions)
- ``grants``     grant constraints and grant-created grants
- ``crypto``     self-describing ciphertext blobs under versioned root keys
- ``storage``    the storage seam (abstract) and its records
- ``sqlite``     the SQLite (WAL) storage, versioned migrations
- ``masterkey``  the master-key seam and its local-keystore implementation
- ``audit``      grouped (one fsync per batch) audit writing
- ``service``    the operations: resolve, authorise, act
- ``app``        the aiohttp server: limits, throttling, health, TLS, shutdown
- ``config``     the TOML config and dev mode
"""
