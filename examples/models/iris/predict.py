"""Iris flower classifier, packaged with Cog.

The model is a scikit-learn logistic regression trained at start-up on the
iris data set that ships inside scikit-learn (no download), which takes well
under a second.
"""

from cog import BasePredictor, Input
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression


class Predictor(BasePredictor):
    def setup(self) -> None:
        data = load_iris()
        self.species = list(data.target_names)
        self.model = LogisticRegression(max_iter=1000).fit(data.data, data.target)

    def predict(
        self,
        sepal_length: float = Input(description="Sepal length in cm", ge=0),
        sepal_width: float = Input(description="Sepal width in cm", ge=0),
        petal_length: float = Input(description="Petal length in cm", ge=0),
        petal_width: float = Input(description="Petal width in cm", ge=0),
    ) -> dict:
        features = [[sepal_length, sepal_width, petal_length, petal_width]]
        probabilities = self.model.predict_proba(features)[0]
        best = int(probabilities.argmax())
        return {"species": self.species[best], "confidence": float(probabilities[best])}
