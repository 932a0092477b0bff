"""Networks: the MST pair (mst) and the automix networks (automix), their files and the model store
(store), and how they run: ONNX export, TensorRT plans, the backends and whole-song inference.
Imports audio/ and below, never fx/."""
