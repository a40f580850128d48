"""training/run.py's arguments, parsed without training: the config file (or the default job) as the base with flags
overriding it value by value."""

import dataclasses
import os
import re
import shlex

import pytest
import yaml

from dmil_hf.testing_utils import import_cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def as_dicts(parsed):
    """The parsed ModelArguments, DataArguments and DMILTrainingArguments as one flat dict."""
    model_args, data_args, training_args, _ = parsed
    return {**dataclasses.asdict(model_args), **dataclasses.asdict(data_args), **training_args.to_dict()}


def test_flags_without_a_config_file_override_the_default_job_instead_of_replacing_it(tmp_path):
    run = import_cli()
    default_job = yaml.safe_load(run.DEFAULT_CONFIG.read_text())
    model_args, data_args, args, used = run.parse_arguments(["--output_dir", str(tmp_path), "--max_steps", "1"])
    assert used == str(run.DEFAULT_CONFIG)
    assert args.output_dir == str(tmp_path) and args.max_steps == 1
    # The default job's values, not the dataclasses' defaults (latent_dim 128, finetune_method "full", no stage rates).
    assert model_args.latent_dim == default_job["latent_dim"] == 32
    assert args.finetune_method == default_job["finetune_method"] == "lora"
    for stage in (1, 2, 3):
        assert getattr(args, f"stage{stage}_learning_rate") == default_job[f"stage{stage}_learning_rate"]
        assert getattr(args, f"stage{stage}_num_train_epochs") == default_job[f"stage{stage}_num_train_epochs"]
    assert data_args.synthetic_train_size == default_job["synthetic_train_size"] and args.use_cpu is True
    # Everything but the two flags is what the default job alone parses to.
    flagged, default = as_dicts((model_args, data_args, args, used)), as_dicts(run.parse_arguments([]))
    assert {k for k in default if flagged[k] != default[k]} == {"output_dir", "max_steps"}


def test_a_flag_beats_the_config_files_value(tmp_path):
    run = import_cli()
    model_args, _, args, _ = run.parse_arguments(["--latent_dim", "8", "--stage2_learning_rate", "0.01"])
    assert model_args.latent_dim == 8 and args.stage2_learning_rate == 0.01
    assert args.stage1_learning_rate == 0.001  # the default job's, untouched
    config = tmp_path / "job.json"
    config.write_text('{"paradigm": "joint", "latent_dim": 48, "lora_r": 4}')
    model_args, _, args, used = run.parse_arguments([str(config), "--lora_r", "2"])
    assert used == str(config) and (model_args.paradigm, model_args.latent_dim, args.lora_r) == ("joint", 48, 2)
    assert args.stage1_learning_rate is None  # a config file is the whole base: nothing of the default job's


@pytest.mark.parametrize("flags, expected", [
    # Booleans: a value, the bare flag, and HfArgumentParser's --no_ form of a field that defaults to True.
    (["--use_cpu", "false"], {"use_cpu": False}),
    (["--check_inputs", "false"], {"check_inputs": False}),
    (["--no_check_inputs"], {"check_inputs": False}),
    (["--overwrite_output_dir"], {"overwrite_output_dir": True}),
    # Lists replace the base's list as a whole.
    (["--modality", "rgb:video:some/vit:8", "audio:audio:some/wav2vec2"],
     {"modality": ["rgb:video:some/vit:8", "audio:audio:some/wav2vec2"]}),
    (["--lora_target_modules", "query"], {"lora_target_modules": ["query"]}),
    # None-able options: `none` / `null` unsets a value the base set.
    (["--save_total_limit", "none"], {"save_total_limit": None}),
    (["--synthetic_dominant_modality", "None"], {"synthetic_dominant_modality": None}),
    (["--stage1_learning_rate", "null", "--stage1_num_train_epochs", "none"],
     {"stage1_learning_rate": None, "stage1_num_train_epochs": None}),
    (["--modality", "none", "--lora_target_modules", "none"], {"modality": None, "lora_target_modules": None}),
])
def test_booleans_lists_and_none_override_a_config_file(tmp_path, flags, expected):
    run = import_cli()
    config = tmp_path / "job.yaml"
    config.write_text(
        "use_cpu: true\ncheck_inputs: true\noverwrite_output_dir: false\nsave_total_limit: 2\n"
        "synthetic_dominant_modality: text\nstage1_learning_rate: 0.001\nstage1_num_train_epochs: 3\n"
        "modality: ['text:text:some/bert']\nlora_target_modules: [query, value]\n"
    )
    values = as_dicts(run.parse_arguments([str(config), *flags]))
    assert {key: values[key] for key in expected} == expected


def test_report_to_takes_a_list_from_the_config_file(tmp_path):
    """transformers types report_to as one string; a config file's list is the parser's default as it is."""
    run = import_cli()
    config = tmp_path / "job.yaml"
    config.write_text("report_to: [tensorboard]\n")
    assert run.parse_arguments([str(config)])[2].report_to == ["tensorboard"]
    config.write_text("report_to: [none]\n")
    assert run.parse_arguments([str(config)])[2].report_to == []
    assert run.parse_arguments([str(config), "--report_to", "none"])[2].report_to == []


def test_none_among_several_values_is_an_error(capsys):
    run = import_cli()
    with pytest.raises(SystemExit):
        run.parse_arguments(["--modality", "text:text:some/bert", "none"])
    assert "--modality: none unsets the option" in capsys.readouterr().err


def test_help_leads_with_usage_and_the_config_file_then_groups_dmil_before_trainer_options(capsys):
    run = import_cli()
    with pytest.raises(SystemExit) as exit_:
        run.parse_arguments(["--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    head = "\n".join(help_text.splitlines()[:20])
    assert head.startswith("usage: accelerate launch training/run.py [CONFIG.yaml | CONFIG.json]")
    assert "config file" in head and "training/configs/synthetic_tiny.yaml" in head and "override" in head
    assert "training/configs/own_data.yaml" in head  # the base of a run on one's own data
    assert "--use_cpu true" in help_text and "--train_file train.csv" in help_text  # the csv-on-CPU example
    # Section titles: unindented lines ending in ':' after the description.
    options = help_text[help_text.index("\noptions:\n"):]
    titles = [line for line in options.splitlines() if line and not line[0].isspace() and line.endswith(":")]
    assert titles == ["options:", f"{run.ModelArguments._argument_group_name}:",
                      f"{run.DataTrainingArguments._argument_group_name}:", f"{run.DMIL_GROUP}:", f"{run.TRAINER_GROUP}:"]

    def section(title):
        start = options.index(f"\n{title}\n")
        following = [options.find(f"\n{t}\n", start + 1) for t in titles]
        return options[start:min([i for i in following if i > start], default=len(options))]

    dmil, trainer = section(f"{run.DMIL_GROUP}:"), section(f"{run.TRAINER_GROUP}:")
    for option in ("--stages", "--stage1_learning_rate", "--stage3_max_steps", "--finetune_method", "--lora_r",
                   "--lora_target_modules", "--model_card_template", "--overwrite_output_dir"):
        assert f"  {option} " in dmil and f"  {option} " not in trainer, option
    for option in ("--learning_rate", "--num_train_epochs", "--output_dir", "--bf16", "--report_to"):
        assert f"  {option} " in trainer and f"  {option} " not in dmil, option
    assert "  --latent_dim " in section(f"{run.ModelArguments._argument_group_name}:")
    assert "  --train_file " in section(f"{run.DataTrainingArguments._argument_group_name}:")


def test_every_option_is_listed_once_in_help():
    run = import_cli()
    parser = run.make_parser()
    listed = [action for group in parser._action_groups for action in group._group_actions]
    assert sorted(map(id, listed)) == sorted(map(id, parser._actions))


# ----------------------------------------------------------------------------------------------------------------
# The documented commands: README, run.py's docstring, --help
# ----------------------------------------------------------------------------------------------------------------


def run_commands(text):
    """The shell commands in `text` that run training/run.py, as argument lists (continuation lines joined,
    comments and environment assignments dropped)."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        if "training/run.py" not in line:
            continue
        tokens = shlex.split(line, comments=True)
        while tokens and re.fullmatch(r"\w+=\S*", tokens[0]):
            tokens.pop(0)
        if tokens and os.path.basename(tokens[0]) in ("accelerate", "python", "python3"):  # not prose naming it
            commands.append(tokens)
    return commands


def readme_commands():
    readme = open(os.path.join(REPO, "README.md")).read()
    return [cmd for block in re.findall(r"```bash\n(.*?)```", readme, re.S) for cmd in run_commands(block)]


def documented_commands():
    run = import_cli()
    sources = {"README": readme_commands(), "run.py docstring": run_commands(run.__doc__),
               "--help": run_commands(run.DESCRIPTION)}
    return [pytest.param(cmd, id=f"{where}: {shlex.join(cmd)[:70]}") for where, cmds in sources.items() for cmd in cmds]


def split_command(command):
    """(accelerate launch's options or None for plain python, run.py's arguments)."""
    script = next(i for i, token in enumerate(command) if token.endswith("training/run.py"))
    launcher, arguments = command[:script], command[script + 1:]
    if "launch" in launcher:
        from accelerate.commands.launch import launch_command_parser

        launch_options = launcher[launcher.index("launch") + 1:]
        parsed = launch_command_parser().parse_args([*launch_options, command[script], *arguments])
        # accelerate launch takes its own options and hands everything after the script to it.
        assert parsed.training_script == command[script] and parsed.training_script_args == arguments
        return launch_options, arguments
    return None, arguments


@pytest.mark.parametrize("command", documented_commands())
def test_documented_command_parses(command, tmp_path):
    """Every flag of the command is one of run.py's and its value converts; where the command needs no GPU (bf16
    needs one), its arguments are built in full."""
    run = import_cli()
    _, arguments = split_command(command)
    if arguments in (["--help"], ["-h"]):
        return  # --help is tested above
    if arguments and arguments[0].endswith((".yaml", ".yml", ".json")):
        shipped = os.path.join(REPO, arguments[0])
        if os.path.isfile(shipped):
            arguments = [shipped, *arguments[1:]]
        else:  # an example name like my.json: an empty job of that name
            (tmp_path / os.path.basename(arguments[0])).write_text("{}")
            arguments = [str(tmp_path / os.path.basename(arguments[0])), *arguments[1:]]
    config_file, flags = run.split_config_file(run.rename_deprecated(arguments))
    parser = run.make_parser()
    if config_file:
        parser.set_defaults(**run.config_values(config_file, parser))
    namespace, unknown = parser.parse_known_args(flags)
    assert unknown == []
    if not namespace.bf16:
        model_args, data_args, args, _ = run.parse_arguments(arguments)
        assert args.bf16 is False


def test_readme_gives_each_gpu_command_with_its_cpu_form():
    """Next to each bf16 command of the README, the same run.py arguments on CPU: --bf16 false --use_cpu true,
    launched with accelerate's --cpu."""
    commands = [split_command(cmd) for cmd in readme_commands()]
    gpu = [arguments for launch, arguments in commands if launch and "bf16" in launch]
    cpu = {tuple(arguments) for launch, arguments in commands if launch and "--cpu" in launch}
    assert gpu
    for arguments in gpu:
        assert (*arguments[:1], "--bf16", "false", "--use_cpu", "true", *arguments[1:]) in cpu, arguments


# ----------------------------------------------------------------------------------------------------------------
# --dataloader_num_workers from the machine
# ----------------------------------------------------------------------------------------------------------------

BASE_PRETRAINED = os.path.join(REPO, "training", "configs", "base_pretrained.yaml")


@pytest.fixture
def machine(monkeypatch):
    """Sets the CPU count os.cpu_count() reports and the number of training processes launched on the machine."""

    def set_machine(cpus, processes=None):
        monkeypatch.setattr(os, "cpu_count", lambda: cpus)
        if processes is None:
            monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("LOCAL_WORLD_SIZE", str(processes))

    return set_machine


@pytest.mark.parametrize("cpus, processes, expected", [
    (2, None, 1), (1, None, 0), (16, None, 4), (6, None, 4), (None, None, 0), (8, 2, 3), (2, 2, 0),
])
def test_dataloader_workers_unset_follow_the_machine(machine, caplog, cpus, processes, expected):
    run = import_cli()
    machine(cpus, processes)
    with caplog.at_level("INFO", logger="dmil_hf.training.data"):
        args = run.parse_arguments([BASE_PRETRAINED, "--bf16", "false"])[2]
    assert args.dataloader_num_workers == expected
    # Said once per run (parse_arguments read --do_eval with a second parse that logged it again).
    assert caplog.text.count(f"dataloader_num_workers={expected} (auto: {cpus or 1} CPUs") == 1
    # `auto` on the command line is the same, also over a config file's number.
    assert run.parse_arguments(["--dataloader_num_workers", "auto"])[2].dataloader_num_workers == expected


@pytest.mark.parametrize("argv, cpus, expected", [
    ([], 16, 0),  # the default job's explicit 0
    (["--dataloader_num_workers", "3"], 16, 3),
    ([BASE_PRETRAINED, "--bf16", "false", "--dataloader_num_workers", "2"], 2, 2),
])
def test_dataloader_workers_set_are_kept(machine, caplog, argv, cpus, expected):
    run = import_cli()
    machine(cpus)
    with caplog.at_level("INFO", logger="dmil_hf.training.data"):
        assert run.parse_arguments(argv)[2].dataloader_num_workers == expected
    assert "dataloader_num_workers" not in caplog.text


def test_dataloader_workers_above_the_cpu_count_are_capped_with_a_warning(machine, caplog, tmp_path):
    run = import_cli()
    machine(2)
    with caplog.at_level("WARNING", logger="dmil_hf.training.data"):
        assert run.parse_arguments(["--dataloader_num_workers", "8"])[2].dataloader_num_workers == 2
    assert caplog.text.count("dataloader_num_workers=8 is more than this machine's 2 CPUs; using 2") == 1
    config = tmp_path / "job.yaml"
    config.write_text("dataloader_num_workers: 5\n")
    assert run.parse_arguments([str(config)])[2].dataloader_num_workers == 2


@pytest.mark.parametrize("value", ["-1", "two"])
def test_dataloader_workers_refuse_other_values(capsys, value):
    run = import_cli()
    with pytest.raises(SystemExit):
        run.parse_arguments(["--dataloader_num_workers", value])
    assert "expected a number of processes (0 or more) or 'auto'" in capsys.readouterr().err


def test_a_modality_named_like_a_three_slot_column_reads_that_column():
    """The own-name rule on the command line: beside a `vision` image row, a video row named `image` reads the column
    `image` (the default --image_column), and `vision` reads `vision`; a flag that is set still wins."""
    from dmil_hf import DMILConfig, Modality
    from dmil_hf.testing_utils import tiny_vision_config

    from dmil_hf.training import data as run_data

    run = import_cli()
    config = DMILConfig(modality_table=[Modality("vision", "image", tiny_vision_config()),
                                        Modality("image", "video", tiny_vision_config(), num_frames=2)],
                        num_labels=2, latent_dim=8)
    assert run_data.modality_columns(run.DataTrainingArguments(), config) == {"vision": "vision", "image": "image"}
    assert run_data.modality_columns(run.DataTrainingArguments(image_column_name="photo"), config) == {"vision": "photo", "image": "image"}
    from dmil_hf.testing_utils import tiny_audio_config

    three_slot = DMILConfig(vision_config=tiny_vision_config(), audio_config=tiny_audio_config(), num_labels=2,
                            latent_dim=8)
    assert run_data.modality_columns(run.DataTrainingArguments(), three_slot) == {"vision": "image", "audio": "audio"}


def test_the_column_a_modality_reads_is_never_dropped_as_an_unused_three_slot_column():
    """A table without a `vision` row treated the default --image_column (`image`) as an unused three-slot column and
    dropped it, although a modality named `image` reads it: training then stopped in the collator with 'no example of
    the batch has the field image'. Columns of three-slot modalities the model lacks (`text`) still go."""
    from datasets import Dataset

    from dmil_hf import DMILConfig, Modality
    from dmil_hf.testing_utils import tiny_audio_config, tiny_feature_encoder_config

    from dmil_hf.training import data as run_data

    run = import_cli()
    config = DMILConfig(modality_table=[Modality("image", "features", tiny_feature_encoder_config()),
                                        Modality("audio", "audio", tiny_audio_config())], num_labels=2, latent_dim=8)
    data_args = run.DataTrainingArguments()
    columns = run_data.modality_columns(data_args, config)
    assert columns == {"image": "image", "audio": "audio"}
    data = Dataset.from_dict({"image": [[[0.0] * 6]], "audio": ["a.wav"], "text": ["a cat"], "label": [0]})
    kept = run_data.drop_unused_modality_columns(data_args, config.modalities, data, read=set(columns.values()))
    assert kept.column_names == ["image", "audio", "label"]
