"""decent_q.QuantizeConfig: decent_q's fields and defaults, checked when built, immutable."""

import dataclasses
import pathlib
import pickle

import numpy as np
import pytest
import tensorflow as tf

from qat_rewrite import decent_q
from qat_rewrite.decent_q import QuantizeConfig

# Vitis AI 3.5's signature, in its order, with its defaults (research decent_q.md §1.1).
DECENT_Q_35 = [
    ("input_nodes", ()), ("output_nodes", ()), ("input_shapes", ()), ("ignore_nodes", ()),
    ("weight_bit", 8), ("activation_bit", 8), ("nodes_bit", ()), ("nodes_method", ()),
    ("method", 1), ("target_type", ""), ("calib_iter", 100), ("output_dir", "./quantize_results"),
    ("align_concat", 0), ("align_pool", 0), ("adjust_shift_bias", 1), ("adjust_shift_cut", 1),
    ("simulate_dpu", 1), ("scale_all_avgpool", 1), ("do_cle", 0), ("replace_relu6", 1),
    ("replace_sigmoid", 0), ("fold_bn_only", 0), ("fold_reshape", 0), ("replace_softmax", 0)]


def seed_config(**changes):
  """The seed workflow's call, word for word apart from the values."""
  kwargs = dict(input_nodes=["net_in"], output_nodes=["net_out"], input_shapes=[[-1, 28, 28, 1]],
                ignore_nodes=[], weight_bit=8, activation_bit=8, method=1, calib_iter=10,
                output_dir="./quantize_results")
  kwargs.update(changes)
  return decent_q.QuantizeConfig(**kwargs)


def test_fields_order_and_defaults_are_decent_q_35():
  config = QuantizeConfig()
  assert [(f.name, getattr(config, f.name)) for f in dataclasses.fields(config)] == DECENT_Q_35


def test_positional_arguments_follow_decent_q_order():
  values = [["a"], ["b"], [[1, 4]], ["c"], 4, 6, ["d:3"], ["e:2"], 0, "DPUCZDX8G", 5, "out",
            1, 2, 2, 0, 0, 0, 1, 0, 1, 1, 1, 1]
  config = QuantizeConfig(*values)
  expected = [tuple(v) if isinstance(v, list) else v for v in values]
  expected[2] = ((1, 4),)
  assert [getattr(config, name) for name, _ in DECENT_Q_35] == expected


def test_docstring_table_lists_every_field_with_its_default():
  rows = {line.split()[0]: line.split()[1] for line in QuantizeConfig.__doc__.splitlines()
          if len(line.split()) > 2}
  for name, default in DECENT_Q_35:
    assert rows.get(name) == repr(default), name


def test_seed_call_works():
  config = seed_config()
  assert config.input_nodes == ("net_in",) and config.output_nodes == ("net_out",)
  assert config.input_shapes == ((-1, 28, 28, 1),)
  assert config.calib_iter == 10 and config.weight_bit == 8 and config.method == 1


@pytest.mark.parametrize("changes, field", [
    (dict(input_nodes="net_in"), "input_nodes"),                  # a str is not split into chars
    (dict(output_nodes=[3]), "output_nodes"),
    (dict(ignore_nodes=["conv1/Conv2D:0"]), "ignore_nodes"),      # a tensor name, not an op name
    (dict(ignore_nodes=[""]), "ignore_nodes"),
    (dict(weight_bit=0), "weight_bit"),
    (dict(weight_bit=1), "weight_bit"),
    (dict(weight_bit=17), "weight_bit"),
    (dict(weight_bit=8.0), "weight_bit"),
    (dict(activation_bit=True), "activation_bit"),                # bool is not an int here
    (dict(activation_bit="8"), "activation_bit"),
    (dict(method=3), "method"),
    (dict(method=-1), "method"),
    (dict(align_concat=3), "align_concat"),
    (dict(align_pool=-1), "align_pool"),
    (dict(adjust_shift_bias=3), "adjust_shift_bias"),
    (dict(adjust_shift_cut=2), "adjust_shift_cut"),
    (dict(simulate_dpu=2), "simulate_dpu"),
    (dict(do_cle="yes"), "do_cle"),
    (dict(replace_softmax=-1), "replace_softmax"),
    (dict(calib_iter=0), "calib_iter"),
    (dict(calib_iter=1.5), "calib_iter"),
    (dict(output_dir=""), "output_dir"),
    (dict(output_dir=None), "output_dir"),
    (dict(target_type=None), "target_type"),
    (dict(input_shapes=[[28, 28, -1]]), "input_shapes"),         # -1 only for the batch
    (dict(input_shapes=[[-1, 0, 28, 1]]), "input_shapes"),
    (dict(input_shapes=[[]]), "input_shapes"),                    # rank 0
    (dict(input_shapes=[[1, 2, 3, 4, 5, 6]]), "input_shapes"),    # rank 6
    (dict(input_shapes=[[-1, None, 28, 1]]), "input_shapes"),
    (dict(input_shapes=[[-1, 28.0, 28, 1]]), "input_shapes"),
    (dict(input_shapes=["-1*28*28*1"]), "input_shapes"),
    (dict(input_shapes=[-1, 28, 28, 1]), "input_shapes"),         # not nested
    (dict(input_shapes=[]), "input_shapes"),                      # one shape per input node
    (dict(input_shapes=[[-1, 28, 28, 1]] * 2), "input_shapes"),
    (dict(nodes_bit="conv1:4"), "nodes_bit"),
    (dict(nodes_bit=["conv1"]), "nodes_bit"),
    (dict(nodes_bit=["conv1:"]), "nodes_bit"),
    (dict(nodes_bit=["conv1:17"]), "nodes_bit"),
    (dict(nodes_bit=["conv1:0"]), "nodes_bit"),
    (dict(nodes_bit=[":4"]), "nodes_bit"),
    (dict(nodes_bit=["conv1:0:4"]), "nodes_bit"),
    (dict(nodes_bit=[("conv1", 4)]), "nodes_bit"),
    (dict(nodes_bit=["conv1:4", "conv1:6"]), "nodes_bit"),        # the same node twice
    (dict(nodes_method=["dw:3"]), "nodes_method"),
    (dict(nodes_method=["dw:x"]), "nodes_method"),
])
def test_bad_values_raise_value_error_naming_the_field(changes, field):
  with pytest.raises(ValueError, match=r"QuantizeConfig\.%s\b" % field):
    seed_config(**changes)


def test_bad_override_message_names_the_entry():
  with pytest.raises(ValueError, match="'conv1:17'"):
    seed_config(nodes_bit=["conv1:17"])


def test_unknown_field_is_named_with_a_suggestion():
  with pytest.raises(ValueError, match="unknown QuantizeConfig field 'weigth_bit'.*'weight_bit'"):
    seed_config(weigth_bit=4)


def test_flags_accept_bool_and_numpy_ints_and_store_plain_ints():
  config = seed_config(do_cle=True, replace_relu6=False, weight_bit=np.int64(4),
                       input_shapes=[np.array([-1, 28, 28, 1]).tolist()],
                       output_dir=pathlib.Path("out"))
  assert (config.do_cle, config.replace_relu6, config.weight_bit) == (1, 0, 4)
  assert type(config.do_cle) is int and type(config.weight_bit) is int
  assert config.output_dir == "out"


def test_empty_node_lists_are_allowed_at_construction():
  assert QuantizeConfig(input_nodes=[], output_nodes=[]).input_nodes == ()


def test_config_is_immutable_and_does_not_alias_the_callers_lists():
  inputs, shapes, bits = ["net_in"], [[-1, 28, 28, 1]], ["conv1/Conv2D:4"]
  config = seed_config(input_nodes=inputs, input_shapes=shapes, nodes_bit=bits)
  with pytest.raises(dataclasses.FrozenInstanceError):
    config.weight_bit = 4
  with pytest.raises(AttributeError):
    config.input_nodes.append("x")
  inputs.append("other")
  shapes[0][1] = 99
  bits[0] = "x:2"
  assert config.input_nodes == ("net_in",) and config.input_shapes == ((-1, 28, 28, 1),)
  assert config.nodes_bit == ("conv1/Conv2D:4",)
  assert inputs == ["net_in", "other"] and shapes == [[-1, 99, 28, 1]]  # the caller's, untouched
  config.nodes_bit_map["conv1/Conv2D"] = 16
  assert config.nodes_bit_map == {"conv1/Conv2D": 4}


def test_replace_copy_pickle_and_equality():
  config = seed_config()
  changed = dataclasses.replace(config, weight_bit=4)
  assert changed.weight_bit == 4 and config.weight_bit == 8
  with pytest.raises(ValueError, match="weight_bit"):
    dataclasses.replace(config, weight_bit=40)
  assert pickle.loads(pickle.dumps(config)) == config == seed_config()
  assert hash(config) == hash(seed_config()) and config != changed


def test_nodes_bit_and_nodes_method_parse_to_maps():
  config = seed_config(nodes_bit=["conv1/Conv2D:4", "dense/MatMul: 16"],
                       nodes_method=("dw/depthwise:2", "conv1/Conv2D:0"))
  assert config.nodes_bit == ("conv1/Conv2D:4", "dense/MatMul:16")  # normalised
  assert config.nodes_bit_map == {"conv1/Conv2D": 4, "dense/MatMul": 16}
  assert config.nodes_method_map == {"dw/depthwise": 2, "conv1/Conv2D": 0}
  assert QuantizeConfig().nodes_bit_map == {} == QuantizeConfig().nodes_method_map


def tiny_graph():
  graph = tf.Graph()
  with graph.as_default():
    x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="net_in")
    w = tf.compat.v1.get_variable("dense/kernel", [4, 2])
    tf.nn.relu(tf.matmul(x, w, name="dense/MatMul"), name="net_out")
  return graph


def test_check_against_graph_accepts_present_nodes():
  config = QuantizeConfig(["net_in"], ["net_out"], [[-1, 4]], ["dense/MatMul"],
                          nodes_bit=["dense/MatMul:4"], nodes_method=["net_out:0"])
  graph = tiny_graph()
  config.check_against_graph(graph)
  config.check_against_graph(graph.as_graph_def())
  with graph.as_default():
    config.check_against_graph()


@pytest.mark.parametrize("changes, field, missing", [
    (dict(input_nodes=["net_inn"]), "input_nodes", "net_inn"),
    (dict(output_nodes=["logits"]), "output_nodes", "logits"),
    (dict(ignore_nodes=["dense/Matmul"]), "ignore_nodes", "dense/Matmul"),
    (dict(nodes_bit=["conv1/Conv2D:4"]), "nodes_bit", "conv1/Conv2D"),
    (dict(nodes_method=["net_outt:2"]), "nodes_method", "net_outt"),
])
def test_check_against_graph_names_the_field_and_the_missing_node(changes, field, missing):
  config = seed_config(**dict(dict(input_shapes=[[-1, 4]]), **changes))
  with pytest.raises(ValueError, match=r"QuantizeConfig\.%s: node '%s'" % (field, missing)):
    config.check_against_graph(tiny_graph())


def test_check_against_graph_suggests_similar_ops_and_reports_every_miss():
  config = seed_config(input_nodes=["net_inn"], output_nodes=["net_outt"], input_shapes=[[-1, 4]])
  with pytest.raises(ValueError) as error:
    config.check_against_graph(tiny_graph())
  message = str(error.value)
  assert "'net_inn'" in message and "similar ops: 'net_in'" in message
  assert "QuantizeConfig.output_nodes: node 'net_outt'" in message


def test_to_string_is_decent_q_flat_format():
  config = seed_config(ignore_nodes=["ign"], nodes_bit=["c:4"], nodes_method=["d:2"],
                       input_nodes=["a", "b"], input_shapes=[[-1, 28, 28, 1], [1, 3]])
  assert config.to_string() == (
      "input_nodes,a,input_nodes,b,output_nodes,net_out,"
      "input_shapes,-1*28*28*1,input_shapes,1*3,ignore_nodes,ign,nodes_bit,c:4,nodes_method,d:2,"
      "weight_bit,8,activation_bit,8,method,1,target_type,,calib_iter,10,"
      "output_dir,./quantize_results,align_concat,0,align_pool,0,adjust_shift_bias,1,"
      "adjust_shift_cut,1,simulate_dpu,1,scale_all_avgpool,1,do_cle,0,replace_relu6,1,"
      "replace_sigmoid,0,fold_bn_only,0,fold_reshape,0,replace_softmax,0,")
  with pytest.raises(ValueError, match="output_dir.*comma"):
    seed_config(output_dir="a,b").to_string()


def test_repr_shows_changed_fields_and_rebuilds_the_config():
  config = seed_config(nodes_bit=["c:4"])
  text = repr(config)
  assert text.startswith("QuantizeConfig(input_nodes=['net_in'], output_nodes=['net_out'], "
                         "input_shapes=[[-1, 28, 28, 1]], nodes_bit=['c:4'], calib_iter=10")
  assert "weight_bit" not in text and "output_dir" not in text  # defaults are left out
  assert eval(text) == config
  assert repr(QuantizeConfig()) == "QuantizeConfig()"
