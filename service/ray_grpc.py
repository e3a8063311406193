"""What Ray Serve's gRPC proxy imports (gRPCOptions.grpc_servicer_functions): the generated
add-function of sdcore.v1, with the generated message modules also registered under the
names their classes carry.

protoc ran in proto/, so the classes in service/gen/ say they live in `sdcore_service_pb2`,
not `service.gen.sdcore_service_pb2`. A plain gRPC server never minds; Serve's proxy pickles
each request to hand it to a replica, and pickle finds a class by its module's name. Kept
apart from service/ray_serve.py so that the proxy imports no more than this.
"""

import sys

from sdcore.service.gen import sdcore_service_pb2, sdcore_service_pb2_grpc

sys.modules.setdefault("sdcore_service_pb2", sdcore_service_pb2)

add_SdcoreServicer_to_server = sdcore_service_pb2_grpc.add_SdcoreServicer_to_server
