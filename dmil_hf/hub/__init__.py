"""Publishing to the Hub, the layer above training (it reads the run folder, `dmil_hf.training.run_folder`; training
reaches it only through the publisher a trainer is given or builds when a card or an upload is due).

    publisher.py       DMILHubPublisher (repo id, pre-flight check, folder uploads) and `python -m dmil_hf.hub.publisher
                       push`, which publishes a finished run folder
    run_publisher.py   DMILRunPublisher: what DMILTrainer calls while it trains (card, check, uploads, deferred errors)
    model_card.py      the model card, rendered from templates/model_card.md (package data)
"""
