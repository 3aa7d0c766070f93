"""The parts of the SDK behind `bakehouse.client`; import from there (or from `bakehouse`), not from here.

    errors.py     the error tree under BakehouseError
    models.py     typed responses: the API's schemas, also readable as the dicts the SDK used to return
    requests.py   every request the SDK sends, built once for both transports
    waiting.py    waiting for a job (event stream, then polling) and paging, as decisions both transports run
    resources.py  `client.repo`, `client.targets.stim`, …: one thin method per request, sync and async
"""
