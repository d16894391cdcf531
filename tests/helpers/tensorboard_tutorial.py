"""A training script written for TensorBoard, the way PyTorch's TensorBoard tutorial writes one.

The test runs it as it is, and again with only the SummaryWriter import changed to monitor's.
Synthetic "clothes" stand in for FashionMNIST (no download); matplotlib draws on Agg.
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.utils.data import DataLoader, Dataset
from torch.utils.tensorboard import SummaryWriter

classes = ("T-shirt/top", "Trouser", "Pullover", "Dress")


class Clothes(Dataset):
    def __init__(self, size=256):
        g = torch.Generator().manual_seed(0)
        self.labels = torch.randint(0, len(classes), (size,), generator=g)
        self.images = torch.rand(size, 1, 28, 28, generator=g) * 0.3
        for i, label in enumerate(self.labels):
            self.images[i, 0, 4 + 5 * label:9 + 5 * label, 4:24] += 0.7

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(6 * 12 * 12, 32)
        self.fc2 = nn.Linear(32, len(classes))

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = x.view(-1, 6 * 12 * 12)
        return self.fc2(F.relu(self.fc1(x)))


def plot_classes_preds(net, images, labels):
    preds = net(images).argmax(1)
    fig = plt.figure(figsize=(6, 2))
    for idx in range(4):
        ax = fig.add_subplot(1, 4, idx + 1, xticks=[], yticks=[])
        ax.imshow(images[idx, 0].numpy(), cmap="Greys")
        ax.set_title(f"{classes[preds[idx]]}\n(label: {classes[labels[idx]]})", fontsize=6)
    return fig


torch.manual_seed(0)
trainloader = DataLoader(Clothes(), batch_size=16, shuffle=True)
net = Net()
criterion = nn.CrossEntropyLoss()
optimizer = optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

writer = SummaryWriter("runs/fashion_mnist_experiment_1")

images, labels = next(iter(trainloader))
img_grid = torch.cat(list(images[:8]), dim=2)  # eight images side by side
writer.add_image("four_fashion_mnist_images", img_grid)
writer.add_graph(net, images)

running_loss = 0.0
for epoch in range(2):
    for i, (inputs, labels) in enumerate(trainloader):
        optimizer.zero_grad()
        outputs = net(inputs)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
        if i % 4 == 3:
            step = epoch * len(trainloader) + i
            writer.add_scalar("training loss", running_loss / 4, step)
            writer.add_scalars("loss", {"train": running_loss / 4, "scaled": running_loss / 8}, step)
            writer.add_histogram("fc1.weight", net.fc1.weight, step)
            writer.add_figure("predictions vs. actuals", plot_classes_preds(net, inputs, labels), global_step=step)
            running_loss = 0.0

writer.add_hparams({"lr": 0.01, "momentum": 0.9}, {"hparam/loss": loss.item()})
writer.close()
