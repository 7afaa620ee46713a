"""One codec per protocol: each decodes its bodies into rows and named parameters for the data plane
(service/dataplane.py) and encodes the answer. v1 and v2 run in the decode worker too (no torch there);
the gRPC codec (``service.codecs.grpc``) is imported only when gRPC is served."""
