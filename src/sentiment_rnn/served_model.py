"""The file MLflow runs to rebuild the raw-text model when it loads it ("models from code").

:func:`sentiment_rnn.serving.log_text_model` logs this file instead of a pickled object. MLflow
executes it at load time, with the package copy shipped in the model's ``code`` folder first on
``sys.path``; nothing in the package imports it.
"""

from mlflow.models import set_model

from sentiment_rnn.serving import TextSentimentModel

set_model(TextSentimentModel())
